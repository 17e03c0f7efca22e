"""Sphinx configuration: furo theme, MyST Markdown, autodoc, and the generated parts."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import msal_keyring_cache  # noqa: E402 - after the path set-up

project = "msal-keyring-cache"
author = "msal-keyring-cache developers"
copyright = "msal-keyring-cache developers"  # noqa: A001 - Sphinx's name
release = msal_keyring_cache.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "docs_gen",  # docs/_ext/docs_gen.py: writes docs/_generated/ from the code
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "both"

html_theme = "furo"
html_title = "msal-keyring-cache"
html_static_path = ["_static"]
html_css_files = ["custom.css"]  # flags such as --no-key-in-keyring never wrap
html_show_sourcelink = False
