"""convfirst-jax: efficient convnets in JAX/Pallas (Lavin 2024, arXiv 2404.03617)."""
from convfirst_jax.folding import apply_folded, fold_batchnorm  # noqa: F401
from convfirst_jax.models import create_model  # noqa: F401
from convfirst_jax.specs import get_spec, list_models  # noqa: F401
from convfirst_jax.weights import export_state_dict, load_pretrained  # noqa: F401
