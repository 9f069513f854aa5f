"""The only package that imports libp2p: host, streams and (later) the DHT facade."""
