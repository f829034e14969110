"""The NBD server: ``protocol`` (pure), ``server`` (asyncio), ``commands`` (QMP)."""
