"""A granted lease: its id, what the broker bound, and the sockets it passed."""


class Lease:
    """A lease the broker granted. A context manager: leaving the ``with`` block releases it.

    - ``id``: the lease's id, unique for the life of the broker;
    - ``sockets``: the bound ``socket.socket`` objects, in the order of the specs (TCP ones
      listening unless asked otherwise); empty for a number lease
      (:meth:`Broker.lease_number`);
    - ``socket``: the first of them (``None`` for a number lease);
    - ``granted``: what the broker bound, a ``GrantedSocket`` per spec (transport, ``addr``
      with its ``ip`` and ``port``, ``listening``, ``v6_only``);
    - ``port`` and ``address``: the port and the IP address (text) of the first.

    The lease lasts until :meth:`release`, or until the connection it was granted on closes
    (for :func:`portbroker.lease`, the lease's own).
    """

    def __init__(self, broker, lease_id, granted, sockets, owns_broker=False):
        self.broker = broker
        self.id = lease_id
        self.granted = tuple(granted)
        self.sockets = list(sockets)
        self.released = False
        self._owns_broker = owns_broker

    @property
    def socket(self):
        return self.sockets[0] if self.sockets else None

    @property
    def port(self):
        return self.granted[0].addr.port

    @property
    def address(self):
        return str(self.granted[0].addr.ip)

    def release(self):
        """Closes this process's copies of the sockets (so that the port is really free once
        the broker says so), then ends the lease. True if the broker released it now; False
        if it had ended already (expired, revoked, taken over, or released before). With its
        own connection (:func:`portbroker.lease`), closes that too."""
        if self.released:
            return False
        self.released = True
        for sock in self.sockets:
            sock.close()
        try:
            if self.broker.closed:
                # The lease ended with its connection.
                return False
            return self.broker.release(self.id)
        finally:
            if self._owns_broker:
                self.broker.close()

    def renew(self, ttl):
        """Gives the lease a time limit of ``ttl`` seconds from now, or extends it (0 removes
        the limit); see :meth:`Broker.renew`."""
        return self.broker.renew(self.id, ttl)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        granted = " ".join(str(socket) for socket in self.granted)
        state = " released" if self.released else ""
        return f"<portbroker.Lease {self.id} {granted}{state}>"
