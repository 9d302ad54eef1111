"""Cloud providers: execbox's provider layer on services it does not run itself.

Two shapes, each written once here and given a vendor by a small adapter over the vendor's official SDK:

- sandbox services (E2B, Modal, Daytona, Cloudflare, Aliyun's code interpreter): a vendor sandbox is an
  execbox ``Instance``; ``service.ServiceProvider`` turns the engine's processes into one shell command line
  each (limits, env, stdin, cwd in the line) and the vendor adapter runs it (``service.Box``);
- function services (AWS Lambda, Cloud Run, Container Apps): no exec of their own; they run execbox's
  handler (``execbox.providers.cloud.handler``), which takes a whole request and answers its
  ``ExecutionResult``; ``function`` holds the wire contract both sides share.

Each vendor's kind (its settings, capabilities and the env variables that configure it) is data in
``catalog``; the SDKs are optional extras imported only when an instance is first used.
"""
