"""The registry's entries: every forward/backward pair with a maker of small float64 sample inputs.

One module per method package, mirroring the library (``checks/attention.py`` for ``attention/``,
``checks/lora.py`` for ``lora/``, ...). Each defines a module-level ``GRADCHECKS: list[Op]``
(``from scratch_transformers.core.registry import Op``) whose ``covers`` name the qualified
``*_backward`` functions it exercises. ``core.registry.all_ops`` collects them from this package,
``python -m scratch_transformers check`` runs them and ``tests/test_registry.py`` fails when a public
``*_backward`` of the library has no entry. Library modules hold the method, not these fixtures.
"""
