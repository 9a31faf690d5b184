"""The deploy/ files, checked without Docker or a cluster: Kubernetes manifests, compose, Dockerfiles.

Every YAML document parses; kinds are known; selectors match their pod templates; Service target
ports name real container ports; workloads have probes (the edge's run the mutual-TLS health command);
every Secret, ConfigMap and claim a pod references is defined here or documented as operator-provided;
the compose file's long-running services have healthchecks and start in order; the Dockerfiles keep
their contract (base image argument, non-root user, health check, exec-form entry point).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KNOWN_KINDS = {
    "Namespace",
    "Service",
    "Deployment",
    "StatefulSet",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "Kustomization",
}
WORKLOADS = {"Deployment", "StatefulSet"}


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append({**doc, "_file": path.name})
    return docs


DOCS = k8s_documents()


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] in kinds]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in of_kind(*WORKLOADS):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def operator_provided_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the table in deploy/k8s/README.md's "Operator-provided Secrets"."""
    text = (K8S / "README.md").read_text()
    section = text.split("## Operator-provided Secrets", 1)[1].split("\n## ", 1)[0]
    secrets: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", section, flags=re.M):
        secrets[row[0]] = set(re.findall(r"`([^`]+)`", row[1]))
    return secrets


def referenced_secrets(pod: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(secret name, key or None for the whole secret) for every Secret the pod reads."""
    for container in containers(pod):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], ref["key"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"], None
    for volume in pod.get("volumes", []):
        sources = [volume] if "secret" in volume else volume.get("projected", {}).get("sources", [])
        for source in sources:
            if "secret" not in source:
                continue
            secret = source["secret"]
            name = secret.get("secretName") or secret["name"]
            items = secret.get("items")
            yield from ((name, item["key"]) for item in items) if items else [(name, None)]


# --- Kubernetes -----------------------------------------------------------------------------------


def test_every_document_parses_with_a_known_kind_and_a_name():
    assert DOCS, "no manifests found"
    for doc in DOCS:
        assert doc["kind"] in KNOWN_KINDS, f"{doc['_file']}: unexpected kind {doc['kind']}"
        assert doc.get("apiVersion"), doc["_file"]
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], doc["_file"]
    names = [(d["kind"], d["metadata"]["name"]) for d in DOCS if d["kind"] != "Kustomization"]
    assert len(names) == len(set(names)), "duplicate resources"


def test_the_kustomization_lists_every_manifest():
    (kustomization,) = of_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_system_is_all_there():
    workloads = {(d["kind"], d["metadata"]["name"]) for d in of_kind(*WORKLOADS)}
    assert ("Deployment", "splitft-control") in workloads
    edges = [d for d in of_kind("StatefulSet", "Deployment") if "edge" in d["metadata"]["name"]]
    assert edges, "no edge workload"
    assert any(d["kind"] == "ConfigMap" and "prometheus.yml" in d["data"] for d in DOCS)


@pytest.mark.parametrize("doc", of_kind(*WORKLOADS), ids=lambda d: d["metadata"]["name"])
def test_selectors_match_template_labels(doc):
    selector = doc["spec"]["selector"]["matchLabels"]
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= labels.items()


@pytest.mark.parametrize("service", of_kind("Service"), ids=lambda d: d["metadata"]["name"])
def test_services_select_pods_and_target_their_ports(service):
    selector = service["spec"]["selector"]
    matching = [
        d
        for d in of_kind(*WORKLOADS)
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert matching, f"service {service['metadata']['name']} selects no pods"
    for workload in matching:
        ports = [p for c in containers(workload["spec"]["template"]["spec"]) for p in c.get("ports", [])]
        names = {p.get("name") for p in ports}
        numbers = {p["containerPort"] for p in ports}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in (names if isinstance(target, str) else numbers), (service["metadata"], target)


def test_statefulsets_have_their_headless_service():
    services = {d["metadata"]["name"]: d for d in of_kind("Service")}
    for doc in of_kind("StatefulSet"):
        service = services[doc["spec"]["serviceName"]]
        assert service["spec"].get("clusterIP") == "None"


@pytest.mark.parametrize("name,pod", list(pod_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_workloads_have_probes_and_run_as_non_root(name, pod):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"]:
        assert container.get("readinessProbe") and container.get("livenessProbe"), name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]


def test_edges_ask_for_a_gpu_and_probe_with_the_mutual_tls_health_command():
    for doc in of_kind(*WORKLOADS):
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if "splitft-edge" not in container["image"]:
            continue
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        args = container["args"]
        assert "--certs=/certs" in args and any(a.startswith("--control-plane=") for a in args)
        assert any(a.startswith("--metrics-port=") for a in args)
        assert "--device=cuda" in args  # the GPU it reserves computes the trunk
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]  # native grpc probes cannot present a cert
            assert command[:1] == ["splitft"] and "health" in command and "--certs" in command
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        certs = next(v for v in pod["volumes"] if v["name"] == mounted["/certs"])
        paths = {item["path"] for s in certs["projected"]["sources"] for item in s["secret"]["items"]}
        assert paths == {
            "ca.pem",
            "edge.pem",
            "edge.key",
            "devices/healthcheck.pem",
            "devices/healthcheck.key",
        }


def test_no_edge_gets_the_ca_private_key():
    for _, pod in pod_specs():
        if any("splitft-edge" in c["image"] for c in pod["containers"]):
            assert ("splitft-ca", "ca.key") not in set(referenced_secrets(pod))


def test_the_control_plane_serves_https_and_edges_verify_it():
    """Bearer secrets and the CA cross the control plane's REST API: it serves HTTPS (review H2)."""
    (control,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "splitft-control"]
    pod = control["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert env["SPLITFT_TLS_CERTS_DIR"] in mounted
    volume = next(v for v in pod["volumes"] if v["name"] == mounted[env["SPLITFT_TLS_CERTS_DIR"]])
    paths = {item["path"] for s in volume["projected"]["sources"] for item in s["secret"]["items"]}
    assert {"control.pem", "control.key", "ca.pem"} <= paths
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    edges = [c for _, p in pod_specs() for c in p["containers"] if "splitft-edge" in c["image"]]
    assert edges
    for edge in edges:
        (url,) = [a.split("=", 1)[1].split()[0] for a in edge["args"] if a.startswith("--control-plane=")]
        assert url.startswith("https://"), url


def test_every_referenced_secret_is_defined_or_operator_provided():
    defined = {
        d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
        for d in of_kind("Secret")
    }
    documented = operator_provided_secrets()
    assert documented, "deploy/k8s/README.md documents no operator-provided Secrets"
    seen = set()
    for name, pod in pod_specs():
        for secret, key in referenced_secrets(pod):
            keys = defined.get(secret, documented.get(secret))
            assert keys is not None, f"{name} reads Secret {secret}, neither defined nor documented"
            assert key is None or key in keys, f"{name} reads key {key} of {secret}; documented: {keys}"
            seen.add(secret)
    assert seen == set(documented) | set(defined), "documented Secrets that nothing reads"


def test_every_referenced_configmap_and_claim_is_defined():
    configmaps = {d["metadata"]["name"] for d in of_kind("ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    for name, pod in pod_specs():
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, name
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                assert ref is None or ref["name"] in configmaps, name


def test_prometheus_scrapes_the_ports_the_pods_name():
    (config,) = [d for d in of_kind("ConfigMap") if "prometheus.yml" in d["data"]]
    scrape = yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    assert set(jobs) == {"splitft-control", "splitft-edge"}
    port_names = {p["name"] for _, pod in pod_specs() for c in pod["containers"] for p in c.get("ports", [])}
    app_names = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] for d in of_kind(*WORKLOADS)
    }
    for job in jobs.values():
        keep = {
            tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"
        }
        assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] in app_names
        assert keep[("__meta_kubernetes_pod_container_port_name",)] in port_names


# --- docker-compose -------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
LONG_RUNNING = ("postgres", "control", "edge")


def test_compose_has_the_four_services_with_healthchecks():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "certs", "control", "edge"}
    for name in LONG_RUNNING:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert "health" in services["edge"]["healthcheck"]["test"]  # mutual TLS: the health command
    assert "--certs" in services["edge"]["healthcheck"]["test"]
    assert any("/healthz" in part for part in services["control"]["healthcheck"]["test"])
    assert services["certs"]["restart"] == "no"


def test_compose_starts_in_order():
    services = COMPOSE["services"]
    conditions = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert spec["condition"] in conditions, (name, dependency)
    assert services["control"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "certs": {"condition": "service_completed_successfully"},
    }
    assert services["edge"]["depends_on"]["control"] == {"condition": "service_healthy"}


def test_compose_volumes_are_declared_and_secrets_have_no_defaults():
    declared = set(COMPOSE["volumes"])
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(("$", "/", ".")) or source in declared, (name, volume)
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "SPLITFT_OPERATOR_KEY", "SPLITFT_EDGE_SECRET"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(not use.startswith((":-", "-")) for use in uses), (secret, uses)
        assert any(use.startswith(":?") for use in uses), secret
    edge = COMPOSE["services"]["edge"]
    assert "--control-plane" in edge["command"] and "--certs" in edge["command"]
    assert "SPLITFT_EDGE_SECRET" in edge["environment"]
    assert COMPOSE["services"]["control"]["environment"]["SPLITFT_DB_URL"].startswith("postgresql+psycopg://")


def test_compose_serves_https_and_the_edge_never_mounts_the_ca_key():
    """Review H2 and L6: HTTPS verified against ca.pem; the edge's volume holds no ca.key."""
    services = COMPOSE["services"]
    control, edge, certs = services["control"], services["edge"], services["certs"]
    assert control["environment"]["SPLITFT_TLS_CERTS_DIR"] == "/certs"
    probe = " ".join(control["healthcheck"]["test"])
    assert "https://127.0.0.1:" in probe and "cafile='/certs/ca.pem'" in probe
    url = edge["command"][edge["command"].index("--control-plane") + 1]
    assert url.startswith("https://127.0.0.1:")
    edge_volumes = {v.split(":")[0]: v.split(":")[1] for v in edge["volumes"]}
    assert "certs" not in edge_volumes and edge_volumes["edge-certs"] == "/certs"
    script = certs["command"][0]
    copied = " ".join(line for line in script.splitlines() if "/edge-certs" in line)
    assert "ca.pem" in copied and "edge.key" in copied and "ca.key" not in copied
    assert "--control-host" in script and "certs control" in script
    # A fresh named volume takes the owner of the image's directory: the certs service (uid 10001)
    # can write /edge-certs only if the control-plane image made it its own.
    assert "/edge-certs" in certs["volumes"][1] and re.search(
        r"chown splitft:splitft [^\n]*/edge-certs", (ROOT / "deploy" / "control-plane.Dockerfile").read_text()
    )


# --- Dockerfiles and Makefile ---------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("name", ["edge", "control-plane"])
def test_dockerfiles_keep_their_contract(name):
    steps = instructions(ROOT / "deploy" / f"{name}.Dockerfile")
    first = dict(steps[:1])
    assert first == {"ARG": "BASE_IMAGE=python:3.11-slim"}
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    ops = dict(final)
    assert ops["USER"].split(":")[0] == "10001"
    assert ops["STOPSIGNAL"] == "SIGTERM"
    assert ops["ENTRYPOINT"].startswith("[")  # exec form: the server is PID 1 and gets SIGTERM
    assert ops["HEALTHCHECK"].split(" CMD ", 1)[1].startswith("[")
    install = " ".join(arg for op, arg in steps if op == "RUN")
    assert "PIP_NO_INDEX=1" in install and "WHEELHOUSE" in install
    assert "/opt/venv" in install


def test_the_control_plane_image_installs_no_model_stack():
    install = " ".join(
        arg for op, arg in instructions(ROOT / "deploy" / "control-plane.Dockerfile") if op == "RUN"
    )
    assert "'.[control]'" in install and "[edge" not in install
    assert not [word for word in shlex.split(install) if word == "torch"], "installs torch"
    pyproject = (ROOT / "pyproject.toml").read_text()
    base = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert not re.search(r'"(torch|transformers|peft|accelerate)', base), "the base must stay light"


def test_make_test_never_needs_docker():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("wheelhouse", "images", "docker-smoke"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "docker" not in test_recipe


def test_every_python_package_is_packaged():
    """The images install the wheel, not the source tree: a package left out of pyproject is missing there."""
    text = (ROOT / "pyproject.toml").read_text()
    roots = dict(re.findall(r'"([\w.]+)" = "([\w/]+)"', text.split("package-dir = {", 1)[1].split("}", 1)[0]))
    packaged = set(re.findall(r'"([\w.]+)"', text.split("\npackages = [", 1)[1].split("]", 1)[0]))
    found = set()
    for name, folder in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found == packaged, f"missing from pyproject packages: {sorted(found - packaged)}"
