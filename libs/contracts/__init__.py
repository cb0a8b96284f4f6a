"""Wire contracts: versioned msgspec events, commands, subjects and the codec."""
