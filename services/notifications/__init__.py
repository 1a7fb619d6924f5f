"""Notifications: a downstream consumer of the order outcome and compensation topics.

It records what it would tell the customer, once per event: records are deduped
by ``ce_id``, so a republished event (a retried publishing activity) counts as
one more delivery of the same notification, never as a second notification.
"""
