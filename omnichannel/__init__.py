"""omnichannel: citizens' complaints from every messaging channel, routed to the OPD that acts."""

__version__ = "0.1.0"
