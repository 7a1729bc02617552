"""Data: sources, cleaning, the data stage, packed token arrays and the datamodule."""
