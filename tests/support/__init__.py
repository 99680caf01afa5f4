"""Test-bed helpers: real memcached processes and a fault-injecting TCP proxy."""
