"""How fast one WebSocket client may send (which hosts and origins may connect at all: hosts.py)."""


class TokenBucket:
    """`rate` messages per second on average, bursts up to `burst`. Time is passed in, so tests need no clock."""

    def __init__(self, rate: float, burst: float, now: float = 0.0):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next message would be accepted."""
        return max(0.0, (1 - self.tokens) / self.rate)
