"""Language tags to one canonical code: ISO 639-1 where the language has one, else ISO 639-3.

BCP-47 parsing, deprecated aliases (iw -> he, jw -> jv) and CLDR's macrolanguage aliases
(swh -> sw, cmn -> zh) come from ``langcodes``; ISO 639-3 individual languages that belong to a
macrolanguage without a CLDR alias (quy, quz -> qu) are folded by ``iso639-lang``'s macrolanguage
table, unless they have an ISO 639-1 code of their own (Indonesian 'id' stays 'id', not Malay 'ms').
Nothing here is hand-kept.
"""

from __future__ import annotations

from functools import lru_cache

import langcodes
from iso639 import Lang
from iso639.exceptions import DeprecatedLanguageValue, InvalidLanguageValue


class LanguageCodeError(ValueError):
    """Not a language tag."""


@lru_cache(maxsize=4096)
def canonical(tag: str) -> str:
    """'sw-KE', 'swh', 'swa', 'Swahili'... -> 'sw'; 'quy' -> 'qu'; 'pcm' -> 'pcm'."""
    t = tag.strip().replace("_", "-")
    if not t:
        raise LanguageCodeError("an empty string is not a language tag")
    try:
        lang = langcodes.Language.get(langcodes.standardize_tag(t, macro=True)).language
    except (ValueError, langcodes.tag_parser.LanguageTagError):
        lang = None
    if not lang:
        for form in (t, t.capitalize()):  # a language name ('Swahili') or an ISO 639-2/B code ('ger')
            try:
                lang = Lang(form).pt3 or None
                break
            except (InvalidLanguageValue, DeprecatedLanguageValue):
                continue
        else:
            raise LanguageCodeError(f"{tag!r} is not a BCP-47 tag, an ISO 639 code or a language name")
    try:
        iso = Lang(lang)
    except DeprecatedLanguageValue as e:  # retired codes: their replacement when ISO 639-3 names one
        to = getattr(e, "change_to", None)
        return canonical(to) if to and to != lang else lang.lower()
    except InvalidLanguageValue:
        return lang.lower()  # a well-formed tag ISO 639 does not list (e.g. a private 'qaa'): kept as given
    macro = iso.macro()
    if macro is not None and not iso.pt1:  # swh, quy, cmn -> sw, qu, zh; 'id' and 'ms' stay apart
        iso = macro
    return iso.pt1 or iso.pt3
