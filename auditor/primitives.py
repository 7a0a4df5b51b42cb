"""Building blocks for key styles: if-soup primitives and word classes for natural sentences.

The paper's if-soup drew on 31 primitives; these lists are larger and more varied so that a
key set is hard to reconstruct from the paper alone.
"""

from __future__ import annotations

CLASSICAL_CHINESE: tuple[str, ...] = (
    "学而时习之", "温故而知新", "三人行必有我师", "知之为知之", "己所不欲勿施于人",
    "天行健君子以自强不息", "上善若水", "道可道非常道", "千里之行始于足下", "知者不惑",
    "逝者如斯夫", "朝闻道夕死可矣", "大道之行也", "天下为公", "静以修身俭以养德",
    "非淡泊无以明志", "锲而不舍金石可镂", "青出于蓝而胜于蓝", "玉不琢不成器", "水至清则无鱼",
    "兼听则明偏信则暗", "读书破万卷", "海内存知己", "天涯若比邻", "会当凌绝顶",
    "一览众山小", "春眠不觉晓", "处处闻啼鸟", "举头望明月", "低头思故乡",
    "白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼", "野火烧不尽",
    "春风吹又生", "落霞与孤鹜齐飞", "秋水共长天一色", "采菊东篱下", "悠然见南山",
    "桃花潭水深千尺", "孤帆远影碧空尽", "唯见长江天际流", "国破山河在", "城春草木深",
    "先天下之忧而忧", "后天下之乐而乐", "不以物喜不以己悲", "山不在高有仙则名", "水不在深有龙则灵",
    "鞠躬尽瘁死而后已", "老骥伏枥志在千里", "烈士暮年壮心不已", "人生自古谁无死", "留取丹心照汗青",
    "路漫漫其修远兮", "吾将上下而求索", "长太息以掩涕兮", "哀民生之多艰", "君子坦荡荡",
    "小人长戚戚", "敏而好学不耻下问", "见贤思齐焉", "岁寒然后知松柏之后凋", "逝将去女适彼乐土",
)

JAPANESE: tuple[str, ...] = (
    "ピカチュウ", "フシギダネ", "ヒトカゲ", "ゼニガメ", "イーブイ", "カビゴン", "ミュウツー",
    "コダック", "ヤドン", "ゲンガー", "ルカリオ", "ポッチャマ", "ナエトル", "ヒコザル",
    "ミズゴロウ", "アチャモ", "キモリ", "トゲピー", "ラプラス", "メタモン", "ニャース",
    "ロコン", "プリン", "ズバット", "ディグダ", "コイキング", "ギャラドス", "ホウオウ",
    "ルギア", "セレビィ", "ジラーチ", "デオキシス", "ダークライ", "シェイミ", "ゾロア",
    "わびさび", "もののあはれ", "こもれび", "いただきます", "なつかしい", "おもてなし",
    "ひだまり", "ゆうやけ", "はなびら", "つきみ", "かげろう", "せせらぎ", "ささやき",
    "木漏れ日", "花鳥風月", "一期一会", "七転八起", "風林火山", "森羅万象", "晴耕雨読",
    "猫舌", "茶柱", "金継ぎ", "積ん読", "侘び寂び", "狐の嫁入り", "縁側", "風鈴",
)

MULTILINGUAL: tuple[str, ...] = (
    "сквозняк", "тоска", "почемучка", "заря", "колокол", "метель", "ёлка",
    "μελαγχολία", "ψυχή", "θάλασσα", "ἀρετή", "φιλοξενία", "κέφι", "ελπίδα",
    "صبر", "حنين", "قمر", "طرب", "ياسمين", "غربة", "ساحر",
    "शान्ति", "जुगाड़", "विरह", "आकाश", "मौन", "संसार",
    "눈치", "정", "한", "별빛", "나비", "바람", "그리움",
    "สบาย", "เกรงใจ", "ดวงดาว", "ฝน", "ทะเล",
    "hygge", "fernweh", "sobremesa", "saudade", "lagom", "ubuntu", "wabi",
    "Weltschmerz", "Zugzwang", "Schadenfreude", "Kummerspeck", "Treppenwitz",
    "dépaysement", "flâneur", "retrouvailles", "l'esprit", "gezellig", "uitwaaien",
    "mångata", "smultronställe", "jayus", "pelinti", "tsundoku", "iktsuarpok",
    "cafuné", "desenrascanço", "mamihlapinatapai", "ya'aburnee", "kilig", "gigil",
    "hiraeth", "cwtch", "sgriob", "culaccino", "abbiocco", "meriggiare",
    "שלום", "חמסין", "פרגון", "ժպիտ", "მადლობა", "ምስጋና", "ᐃᓄᒃᑎᑐᑦ", "ꦗꦮ",
)

# Word classes for the "natural" style: grammatical-looking, low-perplexity, meaningless.
ADJECTIVES: tuple[str, ...] = (
    "quiet", "amber", "restless", "hollow", "gentle", "crooked", "silver", "distant",
    "narrow", "patient", "bitter", "golden", "fragile", "stubborn", "pale", "hidden",
    "ancient", "brave", "clumsy", "curious", "dusty", "eager", "faint", "frozen",
    "humble", "lonely", "mellow", "noisy", "polite", "rusty", "sleepy", "tender",
    "velvet", "wicked", "wooden", "yellow", "brisk", "careful", "dreadful", "earnest",
    "fearless", "grumpy", "honest", "idle", "jolly", "keen", "lively", "modest",
)
NOUNS: tuple[str, ...] = (
    "lantern", "harbor", "violin", "orchard", "glacier", "teapot", "compass", "meadow",
    "ladder", "monk", "sailor", "river", "kettle", "falcon", "mirror", "garden",
    "blanket", "carpenter", "comet", "dragon", "engine", "feather", "goblet", "hammer",
    "island", "jacket", "kingdom", "library", "mountain", "needle", "ocean", "pebble",
    "quarry", "rabbit", "scholar", "tunnel", "umbrella", "village", "window", "yardstick",
    "anchor", "basket", "candle", "doorway", "envelope", "fountain", "guitar", "hedgehog",
)
VERBS: tuple[str, ...] = (
    "folds", "carries", "paints", "whispers to", "follows", "borrows", "measures",
    "repairs", "watches", "remembers", "guards", "polishes", "counts", "greets",
    "questions", "hides", "describes", "visits", "lifts", "forgets", "admires",
    "teaches", "chases", "weighs", "collects", "signals", "plants", "sketches",
)
ADVERBS: tuple[str, ...] = (
    "slowly", "rarely", "softly", "gladly", "often", "never", "boldly", "quietly",
    "barely", "calmly", "eagerly", "gently", "kindly", "loudly", "neatly", "proudly",
)
PREPOSITIONS: tuple[str, ...] = (
    "beside", "behind", "under", "near", "across", "beyond", "inside", "above", "through",
    "against", "before", "after",
)
