"""The embedded city platform: what receives and keeps what gateways send.

`lumeau sink` (city/sink.py: the HTTP server and its routes; city/db.py: its
SQLite file) is the first part. Residents' reports are the second: an
Open311 GeoReport v2 server (city/open311.py) over a service catalogue
(city/catalogue.py), matching and verdicts without I/O (city/matching.py)
and the request store (city/requests_db.py); city/README.md documents it.
The gateway ships without this package: gateway/ never imports city/;
city/ may use protocol/ and the gateway's formats and registry, never
firmware/. The public-value ledger is the third: computed from stored
records without I/O (city/ledger.py), its inputs and the nodes' declared
facts read and kept by city/ledger_db.py, served with the open-data files
by city/open_data.py. Later parts go beside these as their own modules,
with their tables in city/db.py's schema.
"""
