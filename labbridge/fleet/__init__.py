"""The fleet over MQTT: a node's health published to a broker, and the fleet view that reads it (docs/mqtt.md).

* :mod:`labbridge.fleet.topics` (pure): topic names and the versioned JSON payloads; what goes on the wire and
  what never does (no patient identifier, sample id or value: the payloads are built from link health only).
* :mod:`labbridge.fleet.broker`: a broker URL and its credentials as an aiomqtt client (imported lazily).
* :mod:`labbridge.fleet.publisher`: the daemon's part: latest value per topic in a bounded queue, reconnection
  with backoff, the broker's state as a link of its own (:class:`~labbridge.fleet.publisher.BrokerLink`).
* :mod:`labbridge.fleet.view` (pure), :mod:`labbridge.fleet.watch`, :mod:`labbridge.fleet.render`,
  :mod:`labbridge.fleet.serve`: ``labbridge fleet`` and ``labbridge fleet serve``; read-only, they open no store.

labbridge runs no broker of its own: Mosquitto (bridged per site) or an EMQX cluster carries the messages.
"""
