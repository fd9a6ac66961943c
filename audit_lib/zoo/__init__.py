"""The reference model zoo: small real encoders the project trains itself on real images.
``build.build_zoo(profile)`` is the entry point; nothing heavy is imported here."""
