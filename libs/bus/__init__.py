"""The NATS JetStream edge: connect, provision, publish, consume, dead-letter, control bucket."""

from libs.bus.client import Bus, BusUnavailable
from libs.bus.consumer import ConsumerSpec, Inbound, run_consumer, stored_ns

__all__ = ["Bus", "BusUnavailable", "ConsumerSpec", "Inbound", "run_consumer", "stored_ns"]
