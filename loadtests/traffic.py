"""Realistic request mix for load tests (pure data + sampling; no ray, no locust imports).

19 languages with a skewed (roughly Zipf) share like real multilingual traffic, NER and QA, texts
from one sentence to a dozen, and 20% of requests without a language (detected by the server).
The sentences are written for this file (short news-style lines with named entities).
"""

from __future__ import annotations

import random

SENTENCES = {
    "en": ["Angela Merkel met Emmanuel Macron in Paris on Tuesday.", "Microsoft opened a new office in Nairobi last year."],
    "zh": ["习近平周二在北京会见了联合国秘书长古特雷斯。", "阿里巴巴去年在杭州开设了新的研究中心。"],
    "ar": ["التقى الرئيس المصري بوفد من الأمم المتحدة في القاهرة يوم الثلاثاء.", "افتتحت شركة أرامكو مكتبا جديدا في الرياض."],
    "es": ["Pedro Sánchez visitó Buenos Aires el martes.", "Telefónica abrió una nueva oficina en Madrid el año pasado."],
    "de": ["Olaf Scholz traf am Dienstag Vertreter der Vereinten Nationen in Berlin.", "Siemens eröffnete ein neues Werk in München."],
    "fr": ["Emmanuel Macron a rencontré Angela Merkel à Berlin mardi.", "Renault a ouvert une nouvelle usine à Lyon."],
    "sw": ["Rais William Ruto alikutana na viongozi wa Umoja wa Mataifa mjini Nairobi.", "Kampuni ya Safaricom ilifungua ofisi mpya Mombasa."],
    "ru": ["Владимир Путин встретился с делегацией ООН в Москве во вторник.", "Газпром открыл новый офис в Санкт-Петербурге."],
    "pt": ["Lula da Silva visitou Lisboa na terça-feira.", "A Petrobras abriu um novo escritório no Rio de Janeiro."],
    "ja": ["岸田文雄首相は火曜日に東京で国連事務総長と会談した。", "トヨタは名古屋に新しい工場を開設した。"],
    "hi": ["नरेंद्र मोदी ने मंगलवार को दिल्ली में संयुक्त राष्ट्र के प्रतिनिधियों से मुलाकात की।", "टाटा ने मुंबई में नया कार्यालय खोला।"],
    "tr": ["Recep Tayyip Erdoğan salı günü Ankara'da BM heyetiyle görüştü.", "Türk Hava Yolları İstanbul'da yeni bir merkez açtı."],
    "vi": ["Thủ tướng Phạm Minh Chính đã gặp phái đoàn Liên Hợp Quốc tại Hà Nội.", "Vingroup mở văn phòng mới ở Thành phố Hồ Chí Minh."],
    "id": ["Joko Widodo bertemu delegasi PBB di Jakarta pada hari Selasa.", "Pertamina membuka kantor baru di Surabaya."],
    "yo": ["Bola Tinubu pade awọn aṣoju Ajo Agbaye ni Abuja ni ọjọ Iṣẹgun.", "Ile-iṣẹ Dangote ṣi ọfiisi tuntun ni Eko."],
    "is": ["Katrín Jakobsdóttir hitti fulltrúa Sameinuðu þjóðanna í Reykjavík á þriðjudag.", "Icelandair opnaði nýja skrifstofu á Akureyri."],
    "rw": ["Perezida Paul Kagame yahuye n'intumwa z'Umuryango w'Abibumbye i Kigali.", "Sosiyete MTN yafunguye ibiro bishya i Huye."],
    "qu": ["Dina Boluarte warmiqa Limapi Naciones Unidas kamachikuqkunawan tinkurqan.", "Cusco llaqtapi musuq wasita kicharqanku."],
    "my": ["မြန်မာနိုင်ငံ ရန်ကုန်မြို့တွင် ကုလသမဂ္ဂ ကိုယ်စားလှယ်များ တွေ့ဆုံခဲ့သည်။", "မန္တလေးမြို့တွင် ရုံးသစ်တစ်ခု ဖွင့်လှစ်ခဲ့သည်။"],
}
# share of traffic (sums to 100): skewed like real multilingual traffic
WEIGHTS = {"en": 30, "zh": 10, "ar": 8, "es": 7, "de": 6, "fr": 6, "sw": 5, "ru": 4, "pt": 4, "ja": 3, "hi": 3,
           "tr": 3, "vi": 2, "id": 2, "yo": 2, "is": 1.5, "rw": 1.5, "qu": 1, "my": 1}
LENGTHS = [(1, 60), (3, 30), (12, 10)]  # (sentences per text, share %)
QUESTIONS = {"en": "Where did the meeting take place?", "sw": "Mkutano ulifanyika wapi?", "de": "Wo fand das Treffen statt?"}


def pick(rng: random.Random) -> dict:
    """One request: {'endpoint': '/v1/ner' | '/v1/qa', 'json': body, 'language': code}."""
    lang = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    n = rng.choices([n for n, _ in LENGTHS], weights=[w for _, w in LENGTHS])[0]
    sents = SENTENCES[lang]
    text = " ".join(sents[(i + rng.randrange(2)) % len(sents)] for i in range(n))
    body: dict = {}
    if rng.random() < 0.8:
        body["language"] = lang
    if rng.random() < 0.75:
        return {"endpoint": "/v1/ner", "json": {"text": text, **body}, "language": lang}
    q = QUESTIONS.get(lang, QUESTIONS["en"])
    return {"endpoint": "/v1/qa", "json": {"question": q, "context": text, **body}, "language": lang}
