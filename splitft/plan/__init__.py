"""Planning the split per device class (docs/planning.md): the Pareto front (`front`), the planner's
candidates, their projection onto a device class and the recommendation rule (`choice`), and the
plan file the control plane takes (`schema`). Torch-free: the control plane recommends with it;
the measurements themselves are a tool (`splitft.bench.plan`)."""

from splitft.plan.front import Objectives, pareto_front

__all__ = ["Objectives", "pareto_front"]
