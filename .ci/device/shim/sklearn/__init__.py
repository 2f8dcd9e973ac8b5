"""A stand-in for scikit-learn on the GPU machine, which has none and no network: only what
dnax's ``digits`` data source calls, ``sklearn.datasets.load_digits``. .ci/device/run.sh puts it
on the path only where ``import sklearn`` fails; nothing else uses it."""
