"""Edit-R1's reasoning reward model: principles (`principles`), the verdict format (`trace`)."""
