"""MCP prompts: a few recipes that help a model use the bridge well (``prompts/list``, ``prompts/get``).

Each prompt renders one user message that walks the model through the tools, naming the ones this identity can
use now (:class:`Tools`: a prompt never sends a model to a tool it cannot call). The rules they teach are the
bridge's own: a value never passes through the conversation when it need not (intake links, Transit), writes are
check-and-set, errors are read by their ``code``.

Arguments are strings; a missing required one, an unknown one, or a ``path``/``key`` the bridge would refuse is
-32602 (``prompts/get``), like an unknown prompt name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.config import IDENT_RE
from bridge.errors import InvalidPathError
from bridge.mcp.protocol import INVALID_PARAMS, RpcError
from bridge.paths import validate_path

MAX_ARGUMENT = 1024


@dataclass(frozen=True, slots=True)
class Argument:
    name: str
    description: str
    required: bool = False

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "required": self.required}


@dataclass(frozen=True, slots=True)
class Tools:
    """The tools the caller can use now (``tools/list``'s names), for the prompts to name only those."""

    names: frozenset[str]

    def has(self, name: str) -> bool:
        return name in self.names


Render = Callable[[Mapping[str, str], Tools], str]


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    title: str
    description: str
    arguments: tuple[Argument, ...]
    render: Render

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "arguments": [a.definition() for a in self.arguments]}


# -- the recipes ----------------------------------------------------------------------------------------------------

def _store_credential(args: Mapping[str, str], tools: Tools) -> str:
    path = args["path"]
    what = args.get("description") or "the credential"
    lines = [f"Store {what} in Vault at '{path}' (relative to your namespace) without the value ever passing "
             "through this conversation."]
    if tools.has("kv_request_input"):
        lines += [
            f"1. Call kv_request_input with path '{path}'"
            + (f" and a description such as {what!r}" if args.get("description") else "")
            + ". It answers a one-time link.",
            "2. Give the user that link and ask them to enter the value there (a form of the bridge; the value goes "
            "straight to Vault). Never ask the user to paste the value into the chat, and never repeat a value "
            "you are shown by mistake.",
            f"3. When the user says it is done, call kv_metadata with path '{path}' to confirm a new version "
            "exists (it shows versions and times, never the value).",
        ]
    else:
        lines += [
            "Intake links (kv_request_input) are not available to you here, so do not collect the value yourself: "
            "ask the user to store it with their own Vault tooling (for example the bridge's REST API, "
            f"PUT /secrets/{path}) and tell you when it is done. Never ask the user to paste the value into the chat.",
        ]
        if tools.has("kv_metadata"):
            lines.append(f"Then call kv_metadata with path '{path}' to confirm that a version exists.")
    lines.append("If a tool answers isError, read structuredContent.error.code (not_found, forbidden, ...) and "
                 "explain it; do not retry blindly.")
    return "\n".join(lines)


def _rotate_secret(args: Mapping[str, str], tools: Tools) -> str:
    path = args["path"]
    key = args.get("key")
    target = f"the key '{key}' of the secret '{path}'" if key else f"the secret '{path}'"
    lines = [f"Rotate {target} safely, with check-and-set so that a concurrent change is never overwritten."]
    steps = []
    if tools.has("kv_metadata"):
        steps.append(f"Call kv_metadata with path '{path}' and note current_version (call it N).")
    if tools.has("transit_random"):
        steps.append("Call transit_random (for example bytes 32, format base64) for the new value; do not invent "
                     "one yourself and do not show it to the user.")
    if key and tools.has("kv_patch"):
        steps.append(f"Call kv_patch with path '{path}', data {{\"{key}\": <the new value>}} and cas N: only "
                     f"'{key}' changes, the other keys stay.")
    elif tools.has("kv_write"):
        steps.append(f"Call kv_write with path '{path}', the complete new data and cas N (kv_write replaces every "
                     "key: read the secret first with kv_read if other keys must be kept).")
    if not steps or not (tools.has("kv_write") or tools.has("kv_patch")):
        lines.append("You cannot write this secret with the tools you have (your scopes or Vault policy do not "
                     "allow it): tell the user who can.")
    lines += [f"{i}. {step}" for i, step in enumerate(steps, 1)]
    lines += ["If the write fails with cas_mismatch, someone changed the secret meanwhile: read "
              "structuredContent.error.current_version, check the change with the user, and start again from "
              "the first step. Never retry with a larger cas without reading again.",
              "Afterwards, the old version is still kept by Vault; the user decides whether to kv_destroy it."]
    return "\n".join(lines)


def _encrypt_payload(args: Mapping[str, str], tools: Tools) -> str:
    key = args["key"]
    lines = [f"Encrypt a payload with your Transit key '{key}' so that only Vault can decrypt it; the key never "
             "leaves Vault."]
    if not tools.has("transit_encrypt"):
        lines.append("You cannot encrypt with the tools you have (your scopes or Vault policy do not allow "
                     "transit_encrypt): tell the user.")
        return "\n".join(lines)
    lines += [
        "1. Base64-encode the exact bytes of the payload (UTF-8 for text).",
        f"2. Call transit_encrypt with key '{key}' and plaintext <the base64>. The key is created on first use. "
        "It answers ciphertext 'vault:vN:...': store or send that instead of the payload.",
    ]
    if tools.has("transit_decrypt"):
        lines.append(f"3. To read it back later, call transit_decrypt with key '{key}' and the ciphertext, then "
                     "base64-decode the plaintext it returns.")
    if tools.has("transit_rewrap"):
        lines.append("After the key is rotated, transit_rewrap brings an old ciphertext to the latest key version "
                     "without revealing the plaintext.")
    lines.append("For many payloads use batch_input (one call, answered per item) rather than a call each.")
    return "\n".join(lines)


PROMPTS: tuple[Prompt, ...] = (
    Prompt("store_credential", "Store a credential safely",
           "Store a credential (password, API key, token) at a path without its value passing through the "
           "conversation: the user types it into a one-time intake link.",
           (Argument("path", "Where to store it, relative to your namespace (e.g. 'db/prod').", required=True),
            Argument("description", "What the credential is, shown to the user (e.g. 'production database "
                                    "password').")),
           _store_credential),
    Prompt("rotate_secret", "Rotate a secret with check-and-set",
           "Replace a secret's value (or one of its keys) with fresh random bytes, never overwriting a concurrent "
           "change (check-and-set).",
           (Argument("path", "The secret to rotate, relative to your namespace.", required=True),
            Argument("key", "Only this key of the secret (the others are kept); omit to replace the whole "
                            "secret.")),
           _rotate_secret),
    Prompt("encrypt_payload", "Encrypt a payload with Transit",
           "Encrypt data with one of your Vault Transit keys (the key never leaves Vault), and decrypt it later.",
           (Argument("key", "Your Transit key name (lower-case letters, digits, '_' and '-').", required=True),),
           _encrypt_payload),
)


class Prompts:
    """The prompts, by name, in a fixed order."""

    def __init__(self, prompts: tuple[Prompt, ...] = PROMPTS) -> None:
        self._prompts = {p.name: p for p in prompts}

    def get(self, name: str) -> Prompt | None:
        return self._prompts.get(name)

    def definitions(self) -> list[dict[str, Any]]:
        return [p.definition() for p in self._prompts.values()]

    def argument_names(self) -> dict[str, set[str]]:
        """Each prompt's argument names (what ``completion/complete`` may be asked about)."""
        return {p.name: {a.name for a in p.arguments} for p in self._prompts.values()}

    def render(self, name: Any, arguments: Any, tools: Tools) -> dict[str, Any]:
        """The ``GetPromptResult`` of ``prompts/get``; -32602 for an unknown prompt or bad arguments."""
        prompt = self._prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: '{str(name)[:80]}'. Call prompts/list for the prompts "
                                           "available.")
        args = check_arguments(prompt, arguments)
        return {"description": prompt.description,
                "messages": [{"role": "user", "content": {"type": "text", "text": prompt.render(args, tools)}}]}


def check_arguments(prompt: Prompt, arguments: Any) -> dict[str, str]:
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'arguments' must be an object of strings.")
    known = {a.name for a in prompt.arguments}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise RpcError(INVALID_PARAMS, f"Invalid params: prompt '{prompt.name}' has no argument "
                                       f"'{str(unknown[0])[:64]}' (it takes: {', '.join(sorted(known))}).")
    out: dict[str, str] = {}
    for arg in prompt.arguments:
        value = arguments.get(arg.name)
        if value is None or value == "":
            if arg.required:
                raise RpcError(INVALID_PARAMS, f"Invalid params: prompt '{prompt.name}' needs the argument "
                                               f"'{arg.name}'.")
            continue
        if not isinstance(value, str) or len(value) > MAX_ARGUMENT:
            raise RpcError(INVALID_PARAMS, f"Invalid params: '{arg.name}' must be a string of at most "
                                           f"{MAX_ARGUMENT} characters.")
        if arg.name == "path":
            try:
                value = validate_path(value)
            except InvalidPathError as exc:
                raise RpcError(INVALID_PARAMS, f"Invalid params: 'path': {exc.message}") from None
        elif arg.name == "key" and prompt.name == "encrypt_payload" and not IDENT_RE.match(value):
            raise RpcError(INVALID_PARAMS, "Invalid params: 'key' must match ^[a-z0-9][a-z0-9_-]{0,63}$.")
        elif any(ord(ch) < 0x20 for ch in value):
            raise RpcError(INVALID_PARAMS, f"Invalid params: '{arg.name}' may not contain control characters.")
        out[arg.name] = value
    return out
