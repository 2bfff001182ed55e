"""The package version, in a leaf module: prompt_file writes it into every manifest without importing vpt itself."""
__version__ = "0.1.0"
