"""Assets: the Delta table of the tracking worker (and, later, the API worker's send ledger)."""
