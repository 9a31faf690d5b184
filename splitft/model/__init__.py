"""Model families, span loading and the split spec: which blocks run where, loaded from a local
Hugging Face directory so that each side holds only its own spans; LoRA configs safe on a shared trunk."""
