"""Jobs that are not an asset's materialization: operations a person launches from the UI."""
