"""Example order-fulfilment domain built on the bridge's library helpers."""
