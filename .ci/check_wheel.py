"""Checks the installed wheel, run by .ci/run outside the checkout: floodax
imports from site-packages, ships py.typed, and floodax.nnx (Flax is not in
the core dependencies) names the extra that installs Flax."""

import importlib.resources

import floodax

assert "site-packages" in floodax.__file__, floodax.__file__
assert importlib.resources.files("floodax").joinpath("py.typed").is_file()
try:
    import floodax.nnx
except ImportError as error:
    assert '".[demo]"' in str(error), error
else:
    raise AssertionError("floodax.nnx imported without Flax installed")
print("the wheel:", floodax.__version__, "at", floodax.__file__)
