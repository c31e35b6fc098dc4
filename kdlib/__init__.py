"""kdlib: a reproducible study of how knowledge distillation changes interpretability.

Modules (see ARCHITECTURE in the README):
    kdlib.params   validated run parameters (the only reader of params/*.yaml)
    kdlib.data     the generated concept world, Broden and ImageFolder loading
    kdlib.models   models built by name
    kdlib.losses   training objectives built by name
    kdlib.train    fit(params) -> checkpoints and per-epoch metrics
    kdlib.dissect  exact, streaming Network Dissection
"""

__version__ = "0.1.0"
