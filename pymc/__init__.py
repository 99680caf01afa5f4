"""pymc: a fast, thread- and gevent-safe memcached client."""
