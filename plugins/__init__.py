"""The built-in plugins. Each module registers its components through the same hooks that
third-party plugins use, so any of them is a template for writing your own."""

#: modules loaded by :meth:`dnax.registry.Registry.create`, in this order
BUILTINS: tuple[str, ...] = (
    "dnax.plugins.data.digits",
    "dnax.plugins.data.fashion_mnist",
    "dnax.plugins.data.folder",
    "dnax.plugins.teachers.efficientnet",
    "dnax.plugins.spaces.mbconv",
    "dnax.plugins.trainers.distill",
    "dnax.plugins.evaluators.prefix",
    "dnax.plugins.costs.params",
    "dnax.plugins.costs.flops",
    "dnax.plugins.costs.latency",
    "dnax.plugins.selectors.exact",
    "dnax.plugins.retrainers.timm_retrainer",
    "dnax.plugins.retrainers.finetune",
)
