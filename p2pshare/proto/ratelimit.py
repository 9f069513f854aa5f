"""Token buckets: pure rate arithmetic, the caller supplies the clock."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """Allows ``rate`` events per second on average and bursts of up to ``burst``."""

    rate: float
    burst: float
    _tokens: float = field(init=False)
    _updated: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self._tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens at time ``now`` if there are enough; say whether it did."""
        if self._updated is not None and now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now if self._updated is None else max(now, self._updated)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    @property
    def last_used(self) -> float:
        return self._updated if self._updated is not None else float("-inf")

    def delay_for(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are available (0 when they are now)."""
        missing = cost - self._tokens
        return max(0.0, missing / self.rate)


class PerKeyBuckets:
    """One bucket per key (per peer), forgetting keys that have been idle long enough."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                # A full bucket behaves like a fresh one, so dropping those loses nothing.
                refill = self._burst / self._rate
                self._buckets = {
                    k: b for k, b in self._buckets.items() if b.last_used > now - refill
                }
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
        return bucket.take(now)
