"""Teachers: trained networks cut into blocks at stage boundaries."""
