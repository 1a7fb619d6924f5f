"""Kept so ``from tests.certs import ...`` goes on working; the helpers live in
``tests.support.certs``."""

from tests.support.certs import Certs, make_certs

__all__ = ["Certs", "make_certs"]
