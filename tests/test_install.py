"""The set-up's installer (tools/install.py): pip's settings reach uv, or pip installs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from lib.config import REPO_ROOT

_spec = importlib.util.spec_from_file_location("install", REPO_ROOT / "tools" / "install.py")
install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install)


def test_pip_settings_become_uv_options_with_pips_index_rule():
    options, environment = install.uv_arguments({
        "extra-index-url": "file:///opt/a/simple  https://b.example/simple",
        "find-links": "/opt/wheels",
        "constraint": "/etc/pip/constraints.txt",
        "cert": "/etc/ssl/ca.pem",
        "default-timeout": "180",
        "disable-pip-version-check": "1",
    })
    pairs = list(zip(options, options[1:]))
    assert ("--extra-index-url", "file:///opt/a/simple") in pairs
    assert ("--extra-index-url", "https://b.example/simple") in pairs
    assert ("--find-links", "/opt/wheels") in pairs
    assert ("--constraint", "/etc/pip/constraints.txt") in pairs
    # pip takes the best version over every index; uv's default takes the first index's
    assert ("--index-strategy", "unsafe-best-match") in pairs
    assert "--compile-bytecode" in options  # as pip does: imports stay fast without .pyc writes
    assert environment == {"SSL_CERT_FILE": "/etc/ssl/ca.pem", "UV_HTTP_TIMEOUT": "180"}


def test_a_setting_without_translation_leaves_the_install_to_pip():
    assert install.uv_arguments({"no-binary": ":all:"}) is None
    assert install.uv_arguments({"require-hashes": "1"}) is None
    options, _ = install.uv_arguments({"no-index": "true", "find-links": "/w"})
    assert "--no-index" in options and options[-2:] == ["--find-links", "/w"]


def test_pip_config_is_read_with_environment_overriding_files():
    env = {**os.environ, "PIP_EXTRA_INDEX_URL": "https://env.example/simple",
           "PIP_CONFIG_FILE": os.devnull}
    code = ("import json, sys; sys.path.insert(0, 'tools'); import install; "
            "print(json.dumps(install.read_pip_config()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert '"extra-index-url": "https://env.example/simple"' in out
