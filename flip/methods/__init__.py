"""The federated methods' math, for both sides, as plain functions (no nvflare import).

- ``weighted``: FedAvg's sample-weighted mean and the checks an update passes before it is averaged (server);
- ``fedprox``: FedProx's proximal term (site);
- ``feddc``: FedDC's daisy-chain routing (server);
- ``fedopt``: the FedOpt server optimizer step (server);
- ``swag``: SWAG's weight moments (site) and their aggregation (server).
"""
