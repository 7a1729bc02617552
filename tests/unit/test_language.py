"""The function-word language check on short sentences and on non-prose."""

from __future__ import annotations

import pytest

from lm_tasks.data.language import LANGUAGES, detect_language

SENTENCES = {
    "en": [
        "The weather was cold, so we stayed inside and read books all afternoon.",
        "Thou art more lovely and more temperate",
        "Shall I compare thee to a summer's day?",
        "A man is walking his dog in the park.",
    ],
    "de": [
        "Ein Mann mit einer orangefarbenen Mütze, der etwas anstarrt.",
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
        "Ich habe heute keine Zeit, aber morgen komme ich gerne vorbei.",
        "Eine Frau sitzt auf einer Bank und liest ein Buch.",
    ],
    "fr": [
        "Le chat dort sur le canapé pendant que les enfants jouent dehors.",
        "Il fait très beau aujourd'hui et je vais au marché.",
        "Un homme en chemise bleue marche dans la rue.",
        "Deux jeunes hommes blancs sont dehors près de buissons.",
    ],
    "es": [
        "El perro duerme en el sofá mientras los niños juegan en el jardín.",
        "Mañana vamos a la playa con mis primos si no llueve.",
        "Un hombre con una camisa azul camina por la calle.",
        "Ella no sabe dónde está su libro favorito.",
    ],
    "it": [
        "Il gatto dorme sul divano mentre i bambini giocano in giardino.",
        "Domani andiamo al mare con gli amici se non piove.",
        "Un uomo con una camicia blu cammina per la strada.",
        "Questa è la casa dove abitava mio nonno.",
    ],
    "nl": [
        "De kat slaapt op de bank terwijl de kinderen buiten spelen.",
        "Morgen gaan we naar het strand als het niet regent.",
        "Een man in een blauw overhemd loopt over straat.",
        "Ik heb geen tijd om vandaag naar de winkel te gaan.",
    ],
    "pt": [
        "O gato dorme no sofá enquanto as crianças brincam no jardim.",
        "Amanhã vamos à praia com os amigos se não chover.",
        "Um homem com uma camisa azul caminha pela rua.",
        "Ela não sabe onde está o seu livro favorito.",
    ],
    "sv": [
        "Jag har inte tid att gå till affären i dag.",
        "En man i en blå skjorta går på gatan och pratar i telefon.",
    ],
    "da": [
        "Jeg har ikke tid til at gå i butikken i dag.",
        "En mand i en blå skjorte går på gaden og taler i telefon.",
    ],
}


def test_the_supported_languages():
    assert set(LANGUAGES) == {"en", "de", "fr", "es", "it", "nl", "pt", "sv", "da"}


@pytest.mark.parametrize("language,sentence", [(lang, s) for lang, ss in SENTENCES.items() for s in ss])
def test_short_sentences_are_recognised(language, sentence):
    assert detect_language(sentence) == language


def test_a_paragraph_of_english_prose():
    paragraph = (
        "When the committee met again in the autumn, most of its members agreed that the plan had "
        "been too ambitious. They decided to build the bridge in two stages, and to ask the town "
        "for more money only after the first stage was finished."
    )
    assert detect_language(paragraph) == "en"
    assert detect_language(paragraph.upper()) == "en"


@pytest.mark.parametrize("text", [
    "",
    "   \n ",
    "1234 5678 !!!",
    "Hello",  # too few words
    "Hello there, world",  # enough words, no function word hits
    "def f(x): return x + 1",
    "Warszawa Kraków Gdańsk Poznań Wrocław",
    "Tämä on hyvä päivä ja minä olen tänään hyvin iloinen.",  # Finnish: not supported
    "Сегодня очень хорошая погода, поэтому мы идём гулять в парк.",
])
def test_unknown_when_too_short_or_nothing_clearly_wins(text):
    assert detect_language(text) == "unknown"
