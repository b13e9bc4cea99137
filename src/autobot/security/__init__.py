"""Service authentication (plan fix 3): keys, signing, verification, the authorization matrix, audit.

Modules, in the order a signed request meets them:
- keys: ``keys`` (master keys, key ids, pair keys: pure), ``keyring`` (one machine's key files, loaded),
  ``keyring_file`` (the controller's keyring: plan, read, write), ``distribution`` (which files each machine
  receives, key files and Redis password files alike), ``backup`` (the encrypted keyring copy in Redis);
- signing: ``canonical`` (the RFC 9421 signature base and RFC 9530 digest, shared by both sides), ``signing``
  (sign a request, compare a MAC);
- verifying: ``paths`` (unsafe request targets), ``matrix`` (who may call which route), ``replay`` (the
  nonce store in Redis), ``verify`` (``verify_request``: the ordered checks), ``decision`` (its outcome and
  the reason codes, imported as ``reasons``);
- recording: ``audit`` (one JSON line per decision).
``entry`` renders the ASGI entry file that picks the phase middleware (``autobot.middleware``).
"""
