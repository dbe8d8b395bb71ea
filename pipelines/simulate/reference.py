"""Static reference tables of the simulated world: cities, merchant categories, BINs, names.

Coordinates are city centres (WGS84); region codes are real county-level
administrative division codes of the city; area codes are the 4-digit UnionPay
area codes used in merchant ids. BINs are plausible Chinese UnionPay and foreign
prefixes; their card type is fixed per BIN, as an issuer's BIN table would say.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    """A city where terminals are deployed."""

    name: str
    lat: float
    lon: float
    area_code: str
    regions: tuple[str, ...]
    weight: float
    ip_prefix: int  # first octet of the city's broadband addresses


CITIES: tuple[City, ...] = (
    City(
        "上海",
        31.2304,
        121.4737,
        "2900",
        ("310101", "310104", "310105", "310112", "310115"),
        0.2,
        101,
    ),
    City("北京", 39.9042, 116.4074, "1000", ("110101", "110105", "110106", "110108"), 0.18, 111),
    City("广州", 23.1291, 113.2644, "5810", ("440103", "440104", "440106"), 0.12, 113),
    City("深圳", 22.5431, 114.0579, "5840", ("440303", "440304", "440305"), 0.12, 119),
    City("杭州", 30.2741, 120.1551, "3310", ("330102", "330106"), 0.1, 122),
    City("成都", 30.5728, 104.0668, "6510", ("510104", "510107"), 0.09, 125),
    City("武汉", 30.5928, 114.3055, "5210", ("420102", "420106"), 0.07, 171),
    City("西安", 34.3416, 108.9398, "7910", ("610102", "610113"), 0.06, 175),
    City("南京", 32.0603, 118.7969, "3010", ("320102", "320106"), 0.06, 180),
)


@dataclass(frozen=True)
class MerchantCategory:
    """A merchant category with its ticket size, hours and volume profile."""

    mcc: str
    label: str  # Chinese shop-type suffix used in merchant names
    median_yuan: float
    sigma: float
    profile: str  # retail, meal, convenience, night, office, allday
    p24h: float  # probability that such a shop is open 24 h
    rate: float  # median approved sales per day
    weekend: float  # weekend volume factor
    weight: float  # share of merchants
    round_share: float = 0.0  # legitimate whole-yuan tickets (fuel)
    mobile: float = 0.0  # share of mobile terminals


CATEGORIES: tuple[MerchantCategory, ...] = (
    MerchantCategory("5411", "超市", 65, 0.9, "retail", 0.12, 110, 1.25, 0.12),
    MerchantCategory("5499", "便利店", 25, 0.7, "convenience", 0.55, 130, 1.1, 0.12),
    MerchantCategory("5812", "餐厅", 120, 0.7, "meal", 0.03, 55, 1.2, 0.13),
    MerchantCategory("5814", "快餐", 35, 0.5, "meal", 0.08, 100, 1.0, 0.09),
    MerchantCategory("5541", "加油站", 300, 0.45, "convenience", 0.5, 140, 1.1, 0.04, 0.5),
    MerchantCategory("5311", "百货", 400, 1.0, "retail", 0.0, 45, 1.5, 0.04),
    MerchantCategory("5651", "服饰", 350, 0.8, "retail", 0.0, 22, 1.5, 0.08),
    MerchantCategory("5944", "珠宝", 3000, 0.9, "retail", 0.0, 5, 1.4, 0.03),
    MerchantCategory("5732", "电器", 1500, 1.0, "retail", 0.0, 10, 1.4, 0.04),
    MerchantCategory("5912", "药房", 80, 0.8, "convenience", 0.2, 55, 1.0, 0.07),
    MerchantCategory("7011", "酒店", 600, 0.6, "allday", 1.0, 25, 1.2, 0.04),
    MerchantCategory("5813", "酒吧", 300, 0.8, "night", 0.0, 28, 1.6, 0.03),
    MerchantCategory("7230", "美发", 150, 0.7, "retail", 0.0, 14, 1.4, 0.06),
    MerchantCategory("4121", "出租车", 35, 0.6, "allday", 0.3, 22, 1.0, 0.04, 0.0, 1.0),
    MerchantCategory("5331", "杂货", 40, 0.8, "retail", 0.0, 40, 1.1, 0.04),
    MerchantCategory("8062", "诊所", 300, 0.9, "office", 0.0, 60, 0.5, 0.03),
    MerchantCategory("5200", "建材", 2000, 1.0, "office", 0.0, 7, 1.3, 0.02),
    MerchantCategory("5462", "面包房", 30, 0.5, "meal", 0.0, 70, 1.2, 0.04, 0.0, 0.2),
)

#: Hourly shape of sales (24 weights, local time) per profile, before opening hours.
PROFILES: dict[str, tuple[float, ...]] = {
    "retail": (1, 1, 1, 1, 1, 1, 2, 3, 5, 7, 9, 10, 10, 9, 9, 10, 11, 12, 13, 13, 12, 9, 5, 2),
    "meal": (1, 1, 1, 1, 1, 1, 3, 6, 5, 4, 7, 18, 22, 10, 4, 3, 4, 9, 18, 20, 12, 6, 3, 2),
    "convenience": (3, 2, 2, 1, 1, 2, 5, 9, 10, 8, 7, 9, 10, 8, 7, 7, 8, 10, 11, 11, 10, 8, 6, 4),
    "night": (9, 7, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 5, 8, 11, 13, 14, 12),
    "office": (1, 1, 1, 1, 1, 1, 1, 3, 8, 12, 12, 11, 7, 9, 11, 11, 10, 8, 4, 2, 1, 1, 1, 1),
    "allday": (3, 2, 1, 1, 1, 1, 3, 5, 7, 8, 8, 9, 9, 8, 8, 8, 9, 10, 10, 10, 9, 8, 6, 4),
}
#: Opening hours (open, close) per profile; close > 24 crosses midnight.
HOURS: dict[str, tuple[tuple[int, int], ...]] = {
    "retail": ((9, 21), (10, 22), (9, 22), (8, 21)),
    "meal": ((10, 22), (11, 22), (7, 21), (10, 23)),
    "convenience": ((7, 23), (8, 22), (7, 22)),
    "night": ((18, 26), (19, 27), (17, 26)),
    "office": ((8, 18), (9, 17), (8, 20)),
    "allday": ((7, 23), (8, 22)),
}
#: Weekday volume factors Monday..Sunday before the category's weekend factor.
WEEKDAY = (0.95, 0.95, 1.0, 1.0, 1.1, 1.0, 1.0)


@dataclass(frozen=True)
class Bin:
    """An issuer BIN: prefix, card type, issuing country, PAN length and chip share."""

    prefix: str
    card_type: str
    country: str
    length: int
    weight: float
    chip: float = 0.97


BINS: tuple[Bin, ...] = (
    Bin("622202", "debit", "CN", 19, 0.12, 0.9),
    Bin("621700", "debit", "CN", 19, 0.11),
    Bin("622848", "debit", "CN", 19, 0.1, 0.92),
    Bin("621483", "debit", "CN", 16, 0.07),
    Bin("621226", "debit", "CN", 19, 0.06),
    Bin("621661", "debit", "CN", 19, 0.05),
    Bin("622260", "debit", "CN", 19, 0.04),
    Bin("622588", "credit", "CN", 16, 0.08),
    Bin("625965", "credit", "CN", 16, 0.07),
    Bin("628288", "credit", "CN", 16, 0.06),
    Bin("622689", "credit", "CN", 16, 0.05),
    Bin("625802", "credit", "CN", 16, 0.05),
    Bin("623501", "prepaid", "CN", 19, 0.03),
    Bin("620058", "prepaid", "CN", 19, 0.02),
    Bin("476134", "credit", "HK", 16, 0.02, 0.95),
    Bin("438088", "credit", "US", 16, 0.015, 0.95),
    Bin("552299", "credit", "GB", 16, 0.01, 0.95),
    Bin("520169", "debit", "KR", 16, 0.01, 0.95),
    Bin("356895", "credit", "JP", 16, 0.015, 0.95),
    Bin("628016", "unknown", "CN", 19, 0.005),
)

#: Pieces of Chinese merchant names: brand word + category label (+ branch).
NAME_WORDS = (
    "鑫源",
    "华联",
    "好邻居",
    "金福",
    "永辉",
    "百佳",
    "宏达",
    "新世纪",
    "福满",
    "美佳",
    "万家",
    "同心",
    "德润",
    "老街",
    "阳光",
    "和顺",
    "聚丰",
    "嘉禾",
    "喜来",
    "东方",
    "天天",
    "小米粒",
    "大福",
    "兴隆",
    "锦绣",
    "一品",
    "悦来",
    "顺发",
    "江南",
    "红星",
)
BRANCH_WORDS = (
    "",
    "",
    "",
    "（中山路店）",
    "（人民广场店）",
    "（二店）",
    "（旗舰店）",
    "（东门店）",
)
TERMINAL_MODELS = (
    ("新大陆 ME31", "fixed_pos", True),
    ("联迪 E550", "fixed_pos", True),
    ("百富 S90", "fixed_pos", False),
    ("惠尔丰 VX520", "fixed_pos", True),
    ("新国都 K370", "smart_pos", True),
    ("商米 P2", "smart_pos", True),
    ("百富 A920", "smart_pos", True),
    ("拉卡拉 MPOS-M60", "mobile_pos", True),
    ("新大陆 N5", "mobile_pos", False),
    ("联迪 M36", "mobile_pos", True),
)
CHANNELS = ("CH001", "CH002", "CH003", "CH007", "CH012")
#: Mobile network codes (MNC) of Chinese operators.
MNCS = ("00", "01", "11")
