"""A small offline language check from the function words a text uses.

Function words ("the", "und", "les", "que", ...) make up a third to a half of any
running text and differ between languages, so counting them tells the common
European languages apart from a sentence or two, with no model and no download.

Method: the text is lower-cased and cut into runs of letters (so "l'homme" gives
"l" and "homme"). A word listed for k languages adds 1/k to each of them, so words
shared between languages ("de", "en", "in", "a") count for less than telling ones.
The best language wins when

- the text has at least `MIN_WORDS` words,
- at least `MIN_HITS` of its words are function words of that language,
- its score is at least `MIN_FRACTION` of all words (running prose scores about 0.25
  to 0.45; lists of names, numbers, code and languages not listed score far less), and
- its score is at least `MARGIN` times the runner-up's.

Otherwise the answer is "unknown": too little text, or no supported language clearly
ahead (another language, a mix, or no prose at all). Only the first `MAX_CHARS`
characters are read. Norwegian (Bokmål) comes out as Danish or "unknown"; Catalan
and Galician may come out as Spanish or Portuguese, and a short text in a language
not listed may be taken for one sharing its short words (Polish "na", "do": Portuguese).
"""

from __future__ import annotations

import re
from collections import Counter

MIN_WORDS = 3
MIN_HITS = 2
MIN_FRACTION = 0.1
MARGIN = 1.25
MAX_CHARS = 20_000
UNKNOWN = "unknown"

# About 60-85 of the most frequent function words of each language, lower case,
# accents kept. Elided forms are listed without their apostrophe ("l", "qu", "dell"),
# but not every lone letter, which in code and formulae is mostly a variable name.
_FUNCTION_WORDS = {
    "en": """
        the of and to a in is it that was for on are as with he she his her they i you at be
        this have from or had by not but what all were we when your can there an which their
        if do will about how up out them then so these would has been its who into more than
        some no my me him our should could us may must also only very while
        thou thee thy thine art hath doth shall ye
    """,
    "de": """
        der die das und ist nicht ein eine einer einen einem eines zu den dem des mit sich auf
        für im von auch es an als sie er wir ich du ihr sind war wird werden hat haben dass daß
        bei aus nach wie noch nur oder aber vor zur zum über so wenn kann man sein seine ihre
        diese dieser etwas schon um durch gegen unter am hier mehr sehr wo was wer kein keine
        in während
    """,
    "fr": """
        le la les de des du un une et est en que qui dans pour pas ne sur au aux avec ce cette
        ces il elle ils elles nous vous je on se sa son ses leur plus par mais ou où comme
        sont été être avoir a ont fait tout tous y c d l qu aussi très bien lui même
        sans sous entre était avait chez pendant
    """,
    "es": """
        el la los las de del y en que un una unos es por con para no se su sus al lo como más
        pero le ya o este esta porque muy sin sobre también me hasta hay donde quien desde
        todo nos durante todos uno les ni contra otros ese eso ellos esto antes algunos qué
        yo otro otra él tanto esa estos mucho nada ella estar estaba son fue era está están
        tiene entre cuando a mi mis tu si ha han mientras
    """,
    "it": """
        il di che e la un una uno in per non del della dei delle degli al alla ai alle nel
        nella nei sul sulla con da dal dalla si lo gli le è sono ha hanno come ma anche più
        questo questa quello quella io tu lui lei noi voi loro mi ti ci ne se o era essere
        tutto tutti molto quando dove perché già solo suo sua suoi l dell all nell a i mio mentre
    """,
    "nl": """
        de het een en van ik te dat die in is niet op zijn met voor als aan er maar om hij ze
        zij ook bij nog wat door naar dan wel worden wordt werd was kan al uit of hebben
        heeft had tot over hun je we wij u mijn dit deze geen meer zo zal moet veel toen waar
        omdat hier terwijl
    """,
    "pt": """
        o a os as de do da dos das e em no na nos nas um uma uns umas que é não se para por
        com como mais mas ao aos à seu sua seus suas ele ela eles elas eu você foi ser são
        está estão tem têm já também muito quando onde isso isto este esta esse essa pelo
        pela entre sobre até sem ou me nós há só depois meu minha enquanto
    """,
    "sv": """
        och i att det som en på är av för med till den har de inte om ett han men var jag sig
        från vi så kan man när hon nu ska skulle efter också eller vid under detta alla sin
        sina hade blev vara mot bara dem där här hur vad mycket denna sedan än kunde någon ut
        upp medan
    """,
    "da": """
        og i at det som en på er af for med til den har de ikke om et han men var jeg sig fra
        vi så kan man når hun nu skal skulle efter også eller ved under dette alle sin sine
        havde blev være mod kun dem der her hvor hvad meget denne siden end kunne nogen ud
        hvis mig dig mens
    """,
}

LANGUAGES = tuple(_FUNCTION_WORDS)

# Word -> the languages listing it.
_LANGUAGES_OF: dict[str, tuple[str, ...]] = {}
for _language, _words in _FUNCTION_WORDS.items():
    for _word in set(_words.split()):
        _LANGUAGES_OF[_word] = _LANGUAGES_OF.get(_word, ()) + (_language,)
del _language, _words, _word

# A run of letters in any script; digits, underscores and punctuation split words.
_WORD = re.compile(r"[^\W\d_]+")
# Bytes: ASCII letters and the bytes of non-ASCII characters (all >= 0x80 in UTF-8) stay,
# every other ASCII byte becomes a space.
_ASCII_NON_LETTERS_TO_SPACE = bytes(c if c >= 0x80 or chr(c).isalpha() else 0x20 for c in range(256))


def _letter_runs(text: str) -> list[str]:
    """`_WORD.findall(text)`, several times faster: one bytes.translate turns ASCII
    non-letters into spaces and `split` cuts there; only the pieces holding non-ASCII
    characters (which may be letters or not) go through the regex."""
    pieces = text.encode("utf-8", "surrogatepass").translate(_ASCII_NON_LETTERS_TO_SPACE).decode(
        "utf-8", "surrogatepass").split()
    if text.isascii():
        return pieces
    return [word for piece in pieces for word in ((piece,) if piece.isascii() else _WORD.findall(piece))]


def detect_language(text: str) -> str:
    """The ISO 639-1 code of the language of `text` among `LANGUAGES`, or "unknown"."""
    words = _letter_runs(text[:MAX_CHARS].lower())
    if len(words) < MIN_WORDS:
        return UNKNOWN
    # Counting the tuples of languages (None for other words) runs in C; there are
    # only a few dozen distinct tuples to spread over the languages afterwards.
    scores = dict.fromkeys(LANGUAGES, 0.0)
    hits = dict.fromkeys(LANGUAGES, 0)
    for languages, count in Counter(map(_LANGUAGES_OF.get, words)).items():
        if languages is None:
            continue
        for language in languages:
            scores[language] += count / len(languages)
            hits[language] += count
    best, runner_up = sorted(LANGUAGES, key=scores.__getitem__, reverse=True)[:2]
    if (
        hits[best] < MIN_HITS
        or scores[best] < MIN_FRACTION * len(words)
        or scores[best] < MARGIN * scores[runner_up]
    ):
        return UNKNOWN
    return best
