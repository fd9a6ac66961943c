"""The reference model zoo: small real encoders the project trains itself on real images
(issue 4, DESIGN §9). ``build.build_zoo(profile)`` is the entry point; nothing heavy is
imported here."""
