"""Backends for the frameworks pymc's users already work in.

Each submodule imports its framework, which is an optional extra
(``pip install 'pymc-memcached[django]'``, ``[flask]``, ``[dogpile]``, ``[opentelemetry]``).
Nothing in the core imports this package.
"""
