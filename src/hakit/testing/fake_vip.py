"""In-memory :class:`hakit.net.vip.VipPort` for executor tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from hakit.net.vip import Vip


@dataclass
class FakeVip:
    """Records every call; ``addresses`` is what the 'system' holds now."""

    addresses: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=dict)

    def add(self, vip: Vip) -> bool:
        self.calls.append(("add", str(vip.addr)))
        if str(vip.addr) in self.addresses:
            return False
        self.addresses.add(str(vip.addr))
        return True

    def remove(self, vip: Vip) -> bool:
        self.calls.append(("remove", str(vip.addr)))
        if str(vip.addr) not in self.addresses:
            return False
        self.addresses.discard(str(vip.addr))
        return True

    def present(self, vip: Vip) -> bool:
        return str(vip.addr) in self.addresses

    def announce(self, vip: Vip) -> None:
        self.calls.append(("announce", str(vip.addr)))

    def reset_connections(self, vip: Vip) -> int:
        self.calls.append(("reset", str(vip.addr)))
        return self.connections.pop(str(vip.addr), 0)
