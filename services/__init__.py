"""Library shared by gateway, scheduler and worker. No entry points live here."""
