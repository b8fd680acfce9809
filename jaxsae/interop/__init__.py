"""Reading and writing the dictionary formats of other tools."""
