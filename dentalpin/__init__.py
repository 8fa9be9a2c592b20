"""DentalPin: a multi-tenant platform for dental clinics."""

__version__ = "0.1.0"
