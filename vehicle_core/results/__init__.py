"""Results: the document contract (contract.py), is an image done from listings (listing.py), reading
documents back (reading.py), and tabulating them (tables.py)."""
