"""Example order-fulfilment domain, the first user of the ``bridge`` library.

Not part of the distribution: run it from the checkout or the container image
(``python -m services.<name> worker|server``, from the directory holding ``services/``).
Each service keeps its domain (workflows, activities, read-model routes) and
imports ``bridge``'s public surface and ``services.common`` for its wiring.
"""
