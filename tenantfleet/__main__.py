import sys

from tenantfleet.cli import main

sys.exit(main())
