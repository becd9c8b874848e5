"""edgesplit's command line: `edgesplit demo | serve edge | serve cloud`."""
