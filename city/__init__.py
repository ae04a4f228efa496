"""The embedded city platform: what receives and keeps what gateways send.

`lumeau sink` (city/sink.py: the HTTP server and its routes; city/db.py: its
SQLite file) is the first part. The gateway ships without this package:
gateway/ never imports city/; city/ may use protocol/ and the gateway's wire
formats (gateway.formats), never firmware/. Later parts (citizens' reports,
a public-value ledger, open data) go beside sink.py as their own modules,
with their tables in city/db.py's schema.
"""
