"""Sphinx configuration of kannuki's documentation.

Built by scripts/gates with warnings as errors, as HTML and as doctests (the examples run)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

Pages are MyST Markdown. The store pages whose text still lives in README.md include it from
there (one copy); the API reference is generated from the docstrings.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# The kannuki under test: src/ unless a build is installed and KANNUKI_DOCS_INSTALLED=1 says to use it.
if os.environ.get("KANNUKI_DOCS_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(ROOT, "src"))

import kannuki  # noqa: E402 (after the path set-up)

project = "kannuki"
author = "kannuki developers"
copyright = "2026, kannuki developers"
release = kannuki.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# README fragments included into store pages start at their own heading levels (### under a page's #).
suppress_warnings = ["myst.header"]

# -- API reference -------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No network in the build: no intersphinx; annotations to outside types stay plain text.
nitpicky = False

# -- doctests --------------------------------------------------------------------------------------
# Each page's examples run in their own namespace; they use memory://, sqlite:/// and file:/// stores
# in a temporary directory, never a server, and never the user's $KANNUKI_URL.
doctest_global_setup = """
import importlib.util, os, tempfile
os.environ.pop("KANNUKI_URL", None)
os.chdir(tempfile.mkdtemp(prefix="kannuki-docs-"))
import kannuki
"""
doctest_test_doctest_blocks = ""  # only the {doctest} / {testcode} blocks, not every >>> in docstrings

# -- HTML --------------------------------------------------------------------------------------------
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # the build still works with Sphinx's own theme
    html_theme = "alabaster"
html_title = f"kannuki {release}"
html_static_path = ["_static"]

# The benchmark plot is drawn from the benchmarks page's table at every build.
sys.path.insert(0, os.path.dirname(__file__))
import plot_ratios  # noqa: E402

plot_ratios.main()
