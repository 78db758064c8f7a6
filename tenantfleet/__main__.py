from tenantfleet.cli import entry

entry()
